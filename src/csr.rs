//! Device certificates: checking CSRs and issuing certificates from a Device Sub CA.
