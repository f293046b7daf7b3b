"""Device latency profiles: graphs, sampling, measurement protocol, profile folders."""
