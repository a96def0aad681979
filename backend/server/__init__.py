"""The WebSocket server: a job queue in front of one GPU worker thread.

It speaks ``protocol`` on one side and calls the engine's ``generate`` on the
other; it knows nothing of diffusers.
"""
