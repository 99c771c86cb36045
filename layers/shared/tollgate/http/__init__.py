"""The HTTP edge shared by every function: resolver factory, caller identity and the error mapping."""
