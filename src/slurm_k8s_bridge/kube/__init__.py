"""The Kubernetes side: the daemon's one door to the API (writes, one watch cache, one rate limiter, the official client's request pipeline), its RBAC and metrics."""
