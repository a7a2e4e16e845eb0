"""OpenAI Realtime's GA server events as the official SDK defines them (pydantic): every event the server sends is
validated against them, so a missing or mistyped field fails the test that received it."""
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

GA_EVENT = TypeAdapter(RealtimeServerEvent)
