"""OCSP responder and pre-signer."""
