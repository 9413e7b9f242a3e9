"""Statistics, decision policy and reports for canary experiments (numpy/scipy only).

Importable without a server: nothing here may import web, database or MLflow code.
"""
