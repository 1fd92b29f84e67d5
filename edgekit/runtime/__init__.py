"""Reference runtimes for bundles: run one exported component (ORT, LiteRT, onnxruntime-web under
Node) on numpy inputs, and replay a bundle's stored verification data. Runtimes load lazily."""
