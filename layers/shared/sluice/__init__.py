"""Code every Sluice function shares (the SharedLayer)."""
