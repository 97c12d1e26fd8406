"""The HTTP API (aiohttp): JSON views of the engine; POSTs hand commands to the runners."""
