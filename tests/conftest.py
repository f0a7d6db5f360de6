pytest_plugins: list[str] = ["fixtures_sql", "fixtures_valkey"]
