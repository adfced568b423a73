//! Binary COPY codec.
