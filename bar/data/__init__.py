"""Data: the embedded and image-folder datasets, pixel conventions, resumable loaders, the packed-bit code store of
pretokenized images and the content-addressed cache."""
