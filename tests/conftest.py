pytest_plugins: list[str] = ["fixtures_valkey"]
