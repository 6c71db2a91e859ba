"""CAST Explorer: `python app.py` serves the web app on 127.0.0.1:7860 (GRADIO_SERVER_NAME / _PORT)."""

from app import main

if __name__ == "__main__":
    main()
