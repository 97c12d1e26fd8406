"""Pure decisions: stdlib only, no asyncio, no I/O."""
