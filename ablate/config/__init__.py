"""The config: the schema assembled from every axis, its checks, the ladder's rungs."""
