"""Hand off: the champion refitted, logged as an MLflow model, registered and promoted, and its model card."""
