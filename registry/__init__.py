"""The MLflow model registry side: chat model flavours, aliases and the bundled models."""
