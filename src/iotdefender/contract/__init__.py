"""The AWS contract, the ground floor every other layer may import: botocore's ``iot`` service
model, the AWS-shaped errors (``ApiError``) and the input validation the model implies.

Nothing here imports another iotdefender package, and nothing here loads the model at import
time (``service_model()`` parses it on first use).
"""
