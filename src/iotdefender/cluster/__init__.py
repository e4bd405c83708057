"""Cluster mode's foundation: reports carried between nodes on NATS JetStream, partitioned by thing.

Not yet wired into ``iotdefender serve`` (docs/cluster.md says what is left): this package stands on
its own, tested against real ``nats-server`` processes.
"""
