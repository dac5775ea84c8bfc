"""Gateway mode: the sync engine for a box hosted at an MSSanté operator (DESIGN.md).

`connection` opens the authenticated IMAP session to the operator (over aioimaplib,
extended where it lacks STARTTLS and SASL EXTERNAL); `replay`/`replayer` send the
journal of local changes up; the down-sync builds on the same connection."""
