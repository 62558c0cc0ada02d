"""The CA core: authorities, profiles, issuance, revocation, the store and the audit log."""
