"""The report pipeline: the path a datapoint takes from ingest (or the cloud-side closer) to a
stored violation event — which profiles monitor a thing, the batch unit of work, detection inside
its transaction, and the worker process that runs it."""
