"""A GGUF file written byte by byte, without the gguf package: its header and one metadata field."""


def write_gguf_header(path, architecture="llama"):
    """A GGUF (version 3) file whose only metadata is general.architecture, with no tensors: what
    names a file's kind and architecture."""
    def string(text):
        return len(text.encode()).to_bytes(8, "little") + text.encode()

    version, tensors, fields, string_type = 3, 0, 1, 8
    path.write_bytes(b"GGUF" + version.to_bytes(4, "little") + tensors.to_bytes(8, "little")
                     + fields.to_bytes(8, "little") + string("general.architecture")
                     + string_type.to_bytes(4, "little") + string(architecture))
