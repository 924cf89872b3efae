"""Reading images: input expansion (`inputs`: files, folders, globs, @lists; bounded reads of
regular files only) and the one decoder (`decode`: bytes -> 8-bit RGB) that stage one,
labelling and validation all use. numpy + Pillow only; never torch, never other subpackages."""
