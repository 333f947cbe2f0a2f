"""Scale-out on Redis: ``vigil worker`` owns cameras by lease and writes their results to Redis
Streams; ``vigil gateway`` serves REST and WebSocket clients from those streams."""
