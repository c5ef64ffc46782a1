"""Webhooks: the HTTP entry into flows (`/hooks/{flow_id}`), see proto/oih/webhooks/v1."""
