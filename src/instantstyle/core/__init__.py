"""The request and the method: what to make (``Request``), where features go (``blocks``), what they are
(``embeddings``, ``styles``), how an adapter sits in the denoiser (``adapter``, ``processors``, ``routing``) and
how an image is made (``pipeline``)."""
