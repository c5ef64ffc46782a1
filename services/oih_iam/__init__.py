"""IAM: tenants, users, roles, service accounts, signing keys and access tokens."""
