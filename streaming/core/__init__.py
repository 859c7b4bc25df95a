"""The stream core: sessions, the stream log (memory and Redis), readers, transcripts."""
