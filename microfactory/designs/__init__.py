"""The design commons: content-addressed open designs, their licences, and OKH import."""
