//! PE/COFF images: header parsing, the Authenticode digest, and the certificate table.
