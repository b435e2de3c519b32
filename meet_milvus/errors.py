"""User-facing errors: one line that names the thing and the problem.

Every error the project raises for bad input or a bad environment is a `MeetError`; the
subclasses let a caller catch one kind (the CLI prints any of them as one line, exit 2):

    ParameterError         a parameter or setting out of range / of the wrong kind (a ValueError)
    GalleryNotFoundError   no gallery (collection set) of that name in Milvus
    GalleryMismatchError   the gallery was built by another model, or its layout differs
    ServerUnavailableError Milvus cannot be reached, started or authenticated against
    MilvusError            Milvus answered a request with an error
    CheckpointError        a checkpoint directory is missing, unreadable or inconsistent
    DataSetError           a data set (split, features, captions, manifest) is missing or invalid
"""


class MeetError(Exception):
    """An error caused by input or environment, shown to the user as one line (no traceback)."""


class ParameterError(MeetError, ValueError):
    """A parameter or setting has a value the operation cannot use (also a ValueError, so code
    that validates values the Python way catches it too)."""


class GalleryError(MeetError):
    """A gallery cannot be used: see the two subclasses."""


class GalleryNotFoundError(GalleryError):
    """No gallery of that name (or one of its collections is missing)."""


class GalleryMismatchError(GalleryError):
    """The gallery was loaded with another model, or its collections do not match its record."""


class ServerUnavailableError(MeetError):
    """The Milvus server cannot be reached, started, or authenticated against."""


class MilvusError(MeetError):
    """Milvus answered a request with an error (a server that does not answer at all is a
    ServerUnavailableError)."""


class CheckpointError(MeetError):
    """A checkpoint directory is missing, unreadable, or does not fit its config."""


class DataSetError(MeetError):
    """A data set is missing, empty, or not in the expected format."""
