"""Knowledge-base adapters: embedding providers, answering models, chunking and token estimates.

Services (tollgate.services.rag*) call these through small interfaces; heavy libraries (onnxruntime, tokenizers,
numpy, boto3) are imported only inside the provider that needs them.
"""
