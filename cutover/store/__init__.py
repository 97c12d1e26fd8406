"""State stores behind :class:`cutover.store.base.StateStore`."""
