"""Live-captioning server: websocket in, VAD windows, one shared batching engine, captions out."""
