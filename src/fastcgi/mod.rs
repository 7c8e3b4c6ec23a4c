//! FastCGI transport (TODO)
