"""The Secrets service: credentials of flow steps and webhooks, encrypted at rest."""
