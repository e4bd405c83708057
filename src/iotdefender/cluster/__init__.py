"""Cluster mode on NATS JetStream: reports carried between nodes, partitioned by thing, and the
ownership, fencing and notices that keep one owner per partition and every node's caches current.

Assembled into ``iotdefender serve --cluster-url`` by ``cluster_serve.py`` (docs/cluster.md).
"""
