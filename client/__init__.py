"""Clients for the live-captioning server: a file/stream client, the microphone client, shared helpers."""
