"""API keys: the audit of what each key may do, and rotation without a restart."""
