"""The Component Repository: the catalogue of components that flow steps run."""
