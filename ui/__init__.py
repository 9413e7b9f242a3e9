"""The Gradio UI, built by ``build_ui(client)``; talks to the router over its HTTP API."""
