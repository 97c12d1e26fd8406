"""Traffic routers: one module per provider behind :class:`cutover.routers.base.Router`."""
