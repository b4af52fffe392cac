"""The pure core: the contract between the halves, the request model, configuration, normalize and render, QOS/association limits and the gang backends. No I/O; imports nothing of the sides."""
