//! GuestOS manifests: signing and verifying NAME.conf as GyroidOS's cml daemon checks them.
