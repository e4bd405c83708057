"""The AWS IoT control plane: one module per resource, each operation a plain function."""
