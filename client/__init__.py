"""Clients for the live-captioning server: the file client (client.file, on client.stream), the microphone client
(client.mic: capture in client.capture, the resuming link in client.link), shared resampling."""
