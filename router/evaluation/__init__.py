"""The evaluator's side of the database: sufficient statistics aggregated in SQL."""
