"""CRL building, publishing and the CRL responder (see issue: CRLs at national scale)."""
