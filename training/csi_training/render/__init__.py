"""The rendered-versions corpus: music21 scores → note events → audio versions."""
