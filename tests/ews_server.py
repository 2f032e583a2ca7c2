"""A local EWS server for the Exchange channel's tests.

An HTTP server on 127.0.0.1 (a thread per request, like IIS) answering the
SOAP operations exchangelib sends: ConvertId (its version probe), GetFolder,
FindFolder, CreateFolder, SyncFolderItems, GetItem, CreateItem, FindItem,
UpdateItem, MoveItem.  Mailboxes, folders, items and each folder's change
log live in memory.  The responses are rendered from
``tests/fixtures/ews/*.xml``, each written after an example in Microsoft's
EWS operation reference and citing it.

Besides answering, it records what a test needs to check: every request
(operation, mailbox, start and end on ``time.monotonic()``), the highest
number of requests in flight per mailbox, and the mail it "sent".  Faults it
can be told to produce: ``ErrorServerBusy`` with or without
``BackOffMilliseconds`` (:meth:`EwsServer.busy`), a new Message-ID on sent
mail (``rewrite_message_id``), a connection dropped after a send was
accepted (``drop_after_send``), and a delay per request (``delay``).

Authentication: Basic (``users``) and OAuth2 bearer tokens (``tokens``).
"""

from __future__ import annotations

import base64
import contextlib
import email
import functools
import itertools
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.policy import compat32
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from string import Template
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
S = "http://schemas.xmlsoap.org/soap/envelope/"
NS = {"m": M, "t": T, "s": S}
FIXTURES = Path(__file__).parent / "fixtures" / "ews"
DISTINGUISHED = {
    "root": ("Top of Information Store", None),
    "msgfolderroot": ("Top of Information Store", "root"),
    "inbox": ("Inbox", "msgfolderroot"),
    "sentitems": ("Sent Items", "msgfolderroot"),
    "drafts": ("Drafts", "msgfolderroot"),
    "deleteditems": ("Deleted Items", "msgfolderroot"),
    "junkemail": ("Junk Email", "msgfolderroot"),
}


@functools.cache
def _template(name: str) -> Template:
    # The comment citing the example is for the reader: exchangelib walks
    # the children of some elements and would trip over a comment node.
    return Template(re.sub(r"\s*<!--.*?-->", "", (FIXTURES / name).read_text(), flags=re.S))


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text.encode()).decode()


@dataclass
class Folder:
    key: str
    name: str
    parent: str | None


@dataclass
class Item:
    number: int
    folder: str
    mime: bytes
    is_read: bool = False
    is_draft: bool = False
    received: datetime = field(default_factory=lambda: datetime.now(UTC))
    extended: dict[tuple[str, ...], str] = field(default_factory=dict)
    version: int = 1

    def header(self, name: str) -> str:
        message = email.message_from_bytes(self.mime, policy=compat32)
        return " ".join(str(message.get(name, "")).split())


@dataclass
class Mailbox:
    address: str
    folders: dict[str, Folder] = field(default_factory=dict)
    items: dict[int, Item] = field(default_factory=dict)
    log: list[tuple[int, str, str, int]] = field(default_factory=list)
    """The change log: (sequence, folder key, create|delete|read, item number)."""

    def __post_init__(self) -> None:
        for key, (name, parent) in DISTINGUISHED.items():
            self.folders[key] = Folder(key, name, parent)


@dataclass
class Request:
    operation: str
    mailbox: str
    started: float
    ended: float = 0.0
    busy: bool = False


@dataclass
class Sent:
    mailbox: str
    mime: bytes
    """As it went out (with the Message-ID the server gave it)."""


class Fault(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class EwsServer:
    def __init__(self) -> None:
        self.users: dict[str, str] = {"sales": "secret-pw"}
        self.tokens: set[str] = set()
        self.mailboxes: dict[str, Mailbox] = {}
        self.requests: list[Request] = []
        self.max_in_flight: dict[str, int] = {}
        self.sent: list[Sent] = []
        self.delay = 0.0
        self.rewrite_message_id = False
        self.drop_after_send = False
        self._busy: list[int | None] = []
        self._in_flight: dict[str, int] = {}
        self._seq = itertools.count(1)
        self._numbers = itertools.count(1)
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self.url = ""

    # -- what tests call -------------------------------------------------------

    def mailbox(self, address: str) -> Mailbox:
        with self._lock:
            return self.mailboxes.setdefault(address.lower(), Mailbox(address.lower()))

    def deliver(self, address: str, raw: bytes, folder: str = "inbox") -> None:
        """Put a message into a folder as the transport service would."""
        with self._lock:
            box = self.mailbox(address)
            self._add(box, folder, raw)

    def busy(self, *back_off_ms: int | None) -> None:
        """Answer the next requests ``ErrorServerBusy``, one per value: with
        ``BackOffMilliseconds`` of that value, or without it for ``None``."""
        with self._lock:
            self._busy.extend(back_off_ms)

    def folder_items(self, address: str, folder: str) -> list[Item]:
        with self._lock:
            box = self.mailbox(address)
            key = self._folder_key_by_name(box, folder)
            return [item for item in box.items.values() if item.folder == key]

    def calls(self, operation: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if operation in (None, r.operation)]

    # -- lifecycle -------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[EwsServer]:
        server = self

        class Handler(_Handler):
            ews = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/EWS/Exchange.asmx"
        thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
            thread.join(5)

    # -- state -----------------------------------------------------------------

    def _add(self, box: Mailbox, folder: str, raw: bytes, **fields: Any) -> Item:
        item = Item(next(self._numbers), folder, raw, **fields)
        box.items[item.number] = item
        box.log.append((next(self._seq), folder, "create", item.number))
        return item

    def _folder_key_by_name(self, box: Mailbox, name: str) -> str:
        for key, folder in box.folders.items():
            if key == name or folder.name.lower() == name.lower():
                return key
        raise KeyError(name)

    def folder_id(self, box: Mailbox, key: str) -> str:
        return "F." + _b64(f"{box.address}|{key}")

    def item_id(self, box: Mailbox, item: Item) -> str:
        return "I." + _b64(f"{box.address}|{item.number}")

    def _resolve_folder(self, box: Mailbox, element: etree._Element) -> str:
        tag = etree.QName(element).localname
        if tag == "DistinguishedFolderId":
            key = element.get("Id")
            if key not in box.folders:
                raise Fault("ErrorFolderNotFound", f"no distinguished folder {key}")
            return str(key)
        address, _, key = _unb64(element.get("Id", "")[2:]).partition("|")
        if address != box.address or key not in box.folders:
            raise Fault("ErrorFolderNotFound", "The specified folder could not be found.")
        return key

    def _resolve_item(self, box: Mailbox, element: etree._Element) -> Item:
        try:
            address, _, number = _unb64(element.get("Id", "")[2:]).partition("|")
            item = box.items.get(int(number)) if address == box.address else None
        except ValueError:
            item = None
        if item is None:
            raise Fault("ErrorItemNotFound", "The specified object was not found in the store.")
        return item

    # -- one request -------------------------------------------------------------

    def handle(self, body: bytes, anchor: str) -> tuple[int, bytes, Callable[[], None] | None]:
        """The HTTP status, the response, and what to do after answering."""
        root = etree.fromstring(body)
        operation_element = root.find("s:Body", NS)[0]  # type: ignore[index]
        operation = etree.QName(operation_element).localname
        impersonated = root.findtext(".//t:ExchangeImpersonation//t:PrimarySmtpAddress", None, NS)
        address = (impersonated or anchor or "").lower()
        record = Request(operation, address, time.monotonic())
        with self._lock:
            self.requests.append(record)
            self._in_flight[address] = self._in_flight.get(address, 0) + 1
            self.max_in_flight[address] = max(
                self.max_in_flight.get(address, 0), self._in_flight[address]
            )
            busy = self._busy.pop(0) if self._busy else False
        try:
            if self.delay:
                time.sleep(self.delay)
            if busy is not False:
                record.busy = True
                message_xml = (
                    _template("backoff.xml").substitute(milliseconds=busy)
                    if busy is not None
                    else ""
                )
                text = _template("ServerBusy.xml").substitute(message_xml=message_xml)
                return 500, text.encode(), None
            with self._lock:
                box = self.mailbox(address)
                handler = getattr(self, f"_op_{operation}", None)
                if handler is None:
                    raise NotImplementedError(operation)
                messages, after = handler(box, operation_element)
            text = _template("envelope.xml").substitute(operation=operation, messages=messages)
            return 200, text.encode(), after
        finally:
            with self._lock:
                self._in_flight[address] -= 1
                record.ended = time.monotonic()

    def _each(self, operation: str, elements: list[Any], answer: Callable[[Any], str]) -> str:
        out = []
        for element in elements:
            try:
                out.append(answer(element))
            except Fault as fault:
                out.append(
                    _template("error.xml").substitute(
                        operation=operation, code=fault.code, text=escape(fault.text)
                    )
                )
        return "\n".join(out)

    # -- operations --------------------------------------------------------------

    def _op_ConvertId(self, box: Mailbox, request: Any) -> tuple[str, None]:
        return _template("ConvertId.xml").substitute(), None

    def _folder_xml(self, box: Mailbox, key: str) -> str:
        folder = box.folders[key]
        items = [i for i in box.items.values() if i.folder == key]
        parent = folder.parent or key
        return _template("folder.xml").substitute(
            id=self.folder_id(box, key),
            changekey="FCK1",
            parent_id=self.folder_id(box, parent),
            parent_changekey="FCK1",
            name=escape(folder.name),
            total=len(items),
            children=sum(1 for f in box.folders.values() if f.parent == key),
            unread=sum(1 for i in items if not i.is_read),
        )

    def _op_GetFolder(self, box: Mailbox, request: Any) -> tuple[str, None]:
        ids = request.find("m:FolderIds", NS)

        def answer(element: Any) -> str:
            key = self._resolve_folder(box, element)
            return _template("GetFolder.xml").substitute(folder=self._folder_xml(box, key))

        return self._each("GetFolder", list(ids), answer), None

    def _op_FindFolder(self, box: Mailbox, request: Any) -> tuple[str, None]:
        parent = self._resolve_folder(box, request.find("m:ParentFolderIds", NS)[0])
        restriction = request.find("m:Restriction", NS)
        found = [
            key
            for key, folder in box.folders.items()
            if folder.parent == parent
            and (restriction is None or _matches(restriction[0], _folder_value(folder)))
        ]
        folders = "\n".join(self._folder_xml(box, key) for key in found)
        return _template("FindFolder.xml").substitute(count=len(found), folders=folders), None

    def _op_CreateFolder(self, box: Mailbox, request: Any) -> tuple[str, None]:
        parent = self._resolve_folder(box, request.find("m:ParentFolderId", NS)[0])
        out = []
        for folder in request.find("m:Folders", NS):
            key = f"f{next(self._numbers)}"
            box.folders[key] = Folder(key, folder.findtext("t:DisplayName", "", NS), parent)
            out.append(
                _template("CreateFolder.xml").substitute(
                    id=self.folder_id(box, key), changekey="FCK1"
                )
            )
        return "\n".join(out), None

    def _op_SyncFolderItems(self, box: Mailbox, request: Any) -> tuple[str, None]:
        key = self._resolve_folder(box, request.find("m:SyncFolderId", NS)[0])
        state_text = request.findtext("m:SyncState", "", NS)
        watermark = int(_unb64(state_text)) if state_text else 0
        limit = int(request.findtext("m:MaxChangesReturned", "512", NS))
        # What changed in this folder since the state's watermark, one entry per
        # item: created (and still here), deleted (and known before), or read.
        changes: dict[int, tuple[int, str]] = {}
        for seq, folder, kind, number in box.log:
            if folder != key or seq <= watermark:
                continue
            if kind == "create":
                changes[number] = (seq, "create")
            elif kind == "delete":
                if changes.get(number, (0, ""))[1] == "create":
                    del changes[number]
                else:
                    changes[number] = (seq, "delete")
            elif number not in changes:
                changes[number] = (seq, "read")
        ordered = sorted(changes.items(), key=lambda entry: entry[1][0])
        batch = ordered[:limit]
        new_watermark = batch[-1][1][0] if len(batch) < len(ordered) else _last_seq(box, watermark)
        out = []
        for number, (_, kind) in batch:
            item = box.items.get(number)
            fake = item or Item(number, key, b"")
            values = {"id": self.item_id(box, fake), "changekey": f"CK{fake.version}"}
            if kind == "create":
                out.append(_template("sync_create.xml").substitute(values))
            elif kind == "delete":
                out.append(_template("sync_delete.xml").substitute(values))
            else:
                is_read = "true" if item and item.is_read else "false"
                out.append(_template("sync_readflag.xml").substitute(values, is_read=is_read))
        return (
            _template("SyncFolderItems.xml").substitute(
                sync_state=_b64(str(new_watermark)),
                includes_last="true" if len(batch) == len(ordered) else "false",
                changes="\n".join(out),
            ),
            None,
        )

    def _message_xml(self, box: Mailbox, item: Item, shape: Any) -> str:
        fields = {
            uri.get("FieldURI")
            for uri in (shape.iterfind(".//t:FieldURI", NS) if shape is not None else [])
        }
        props = []
        if "item:MimeContent" in fields:
            props.append(
                f'<t:MimeContent CharacterSet="UTF-8">{base64.b64encode(item.mime).decode()}'
                "</t:MimeContent>"
            )
        props.append(f'<t:ItemId Id="{self.item_id(box, item)}" ChangeKey="CK{item.version}" />')
        if "item:Subject" in fields:
            props.append(f"<t:Subject>{escape(item.header('Subject'))}</t:Subject>")
        if "item:DateTimeReceived" in fields:
            stamp = item.received.strftime("%Y-%m-%dT%H:%M:%SZ")
            props.append(f"<t:DateTimeReceived>{stamp}</t:DateTimeReceived>")
        if shape is not None:
            for uri in shape.iterfind(".//t:ExtendedFieldURI", NS):
                value = item.extended.get(_extended_key(uri))
                if value is not None:
                    attributes = " ".join(f"{k}={quoteattr(v)}" for k, v in uri.attrib.items())
                    props.append(
                        f"<t:ExtendedProperty><t:ExtendedFieldURI {attributes} />"
                        f"<t:Value>{escape(value)}</t:Value></t:ExtendedProperty>"
                    )
        if "message:InternetMessageId" in fields:
            props.append(
                f"<t:InternetMessageId>{escape(item.header('Message-ID'))}</t:InternetMessageId>"
            )
        if "message:IsRead" in fields:
            props.append(f"<t:IsRead>{'true' if item.is_read else 'false'}</t:IsRead>")
        return _template("message.xml").substitute(properties="\n".join(props))

    def _op_GetItem(self, box: Mailbox, request: Any) -> tuple[str, None]:
        shape = request.find("m:ItemShape", NS)

        def answer(element: Any) -> str:
            item = self._resolve_item(box, element)
            return _template("GetItem.xml").substitute(message=self._message_xml(box, item, shape))

        return self._each("GetItem", list(request.find("m:ItemIds", NS)), answer), None

    def _op_CreateItem(self, box: Mailbox, request: Any) -> tuple[str, Callable[[], None] | None]:
        disposition = request.get("MessageDisposition", "SaveOnly")
        saved = request.find("m:SavedItemFolderId", NS)
        folder = self._resolve_folder(box, saved[0]) if saved is not None else "drafts"
        out = []
        after = None
        for message in request.find("m:Items", NS):
            mime = base64.b64decode(message.findtext("t:MimeContent", "", NS))
            extended = {
                _extended_key(prop.find("t:ExtendedFieldURI", NS)): prop.findtext("t:Value", "", NS)
                for prop in message.iterfind("t:ExtendedProperty", NS)
            }
            if disposition == "SaveOnly":
                flags = int(extended.get(("tag", "0xe07"), "8"))
                item = self._add(
                    box, folder, mime, is_read=bool(flags & 1), is_draft=bool(flags & 8)
                )
                item.extended = extended
                item_id = self.item_id(box, item)
                ids = f'<t:Message><t:ItemId Id="{item_id}" ChangeKey="CK1" /></t:Message>'
                out.append(_template("CreateItem.xml").substitute(items=ids))
                continue
            if self.rewrite_message_id:
                mime = _with_message_id(mime, f"<{uuid.uuid4().hex.upper()}@EX01.exchange.test>")
            self.sent.append(Sent(box.address, mime))
            if disposition == "SendAndSaveCopy":
                item = self._add(box, folder, mime, is_read=True)
                item.extended = extended
            out.append(_template("CreateItem.xml").substitute(items=""))
            if self.drop_after_send:
                after = _drop
        return "\n".join(out), after

    def _op_FindItem(self, box: Mailbox, request: Any) -> tuple[str, None]:
        key = self._resolve_folder(box, request.find("m:ParentFolderIds", NS)[0])
        restriction = request.find("m:Restriction", NS)
        view = request.find("m:IndexedPageItemView", NS)
        offset = int(view.get("Offset", "0")) if view is not None else 0
        size = int(view.get("MaxEntriesReturned", "1000")) if view is not None else 1000
        found = [
            item
            for item in box.items.values()
            if item.folder == key
            and (restriction is None or _matches(restriction[0], _item_value(item)))
        ]
        page = found[offset : offset + size]
        shape = request.find("m:ItemShape", NS)
        return (
            _template("FindItem.xml").substitute(
                next_offset=offset + len(page),
                total=len(found),
                includes_last="true" if offset + len(page) >= len(found) else "false",
                items="\n".join(self._message_xml(box, item, shape) for item in page),
            ),
            None,
        )

    def _op_UpdateItem(self, box: Mailbox, request: Any) -> tuple[str, None]:
        def answer(change: Any) -> str:
            item = self._resolve_item(box, change.find("t:ItemId", NS))
            for update in change.find("t:Updates", NS):
                uri = update.find("t:FieldURI", NS)
                if uri is not None and uri.get("FieldURI") == "message:IsRead":
                    value = update.findtext(".//t:IsRead", "false", NS) in (
                        "true",
                        "1",
                    )  # xs:boolean
                    if value != item.is_read:
                        item.is_read = value
                        box.log.append((next(self._seq), item.folder, "read", item.number))
            item.version += 1
            return _template("UpdateItem.xml").substitute(
                id=self.item_id(box, item), changekey=f"CK{item.version}"
            )

        changes = list(request.find("m:ItemChanges", NS))
        return self._each("UpdateItem", changes, answer), None

    def _op_MoveItem(self, box: Mailbox, request: Any) -> tuple[str, None]:
        target = self._resolve_folder(box, request.find("m:ToFolderId", NS)[0])

        def answer(element: Any) -> str:
            item = self._resolve_item(box, element)
            box.log.append((next(self._seq), item.folder, "delete", item.number))
            del box.items[item.number]
            moved = self._add(box, target, item.mime, is_read=item.is_read)
            moved.extended = item.extended
            return _template("MoveItem.xml").substitute(
                id=self.item_id(box, moved), changekey="CK1"
            )

        return self._each("MoveItem", list(request.find("m:ItemIds", NS)), answer), None


def _last_seq(box: Mailbox, watermark: int) -> int:
    return max([watermark, *(seq for seq, *_ in box.log)])


def _drop() -> None:
    raise ConnectionAbortedError("told to drop the connection after the send")


def _with_message_id(mime: bytes, message_id: str) -> bytes:
    head, sep, body = mime.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"message-id:")]
    lines.append(b"Message-ID: " + message_id.encode())
    return b"\r\n".join(lines) + sep + body


def _extended_key(uri: Any) -> tuple[str, ...]:
    if uri.get("PropertyTag"):
        return ("tag", hex(int(uri.get("PropertyTag"), 0)))
    return ("named", (uri.get("PropertySetId") or "").lower(), uri.get("PropertyName") or "")


def _folder_value(folder: Folder) -> Callable[[Any], str | None]:
    def value(uri: Any) -> str | None:
        return folder.name if uri.get("FieldURI") == "folder:DisplayName" else None

    return value


def _item_value(item: Item) -> Callable[[Any], str | None]:
    def value(uri: Any) -> str | None:
        if etree.QName(uri).localname == "ExtendedFieldURI":
            return item.extended.get(_extended_key(uri))
        name = uri.get("FieldURI")
        if name == "message:InternetMessageId":
            return item.header("Message-ID")
        if name == "item:Subject":
            return item.header("Subject")
        return None

    return value


def _matches(expression: Any, value: Callable[[Any], str | None]) -> bool:
    """A restriction ("Restriction" in the EWS reference): Or, And, Not,
    IsEqualTo, IsNotEqualTo, Contains, Exists."""
    tag = etree.QName(expression).localname
    if tag == "Or":
        return any(_matches(child, value) for child in expression)
    if tag == "And":
        return all(_matches(child, value) for child in expression)
    if tag == "Not":
        return not _matches(expression[0], value)
    uri = expression[0]
    got = value(uri)
    if tag == "Exists":
        return got is not None
    if got is None:
        return False
    constant = expression.find(".//t:Constant", NS)
    wanted = constant.get("Value", "") if constant is not None else ""
    if tag == "Contains":
        ignore_case = "Ignore" in expression.get("ContainmentComparison", "Exact")
        if ignore_case:
            got, wanted = got.lower(), wanted.lower()
        mode = expression.get("ContainmentMode", "Substring")
        if mode == "FullString":
            return got == wanted
        if mode == "Prefixed":
            return got.startswith(wanted)
        return wanted in got
    if tag == "IsEqualTo":
        return got == wanted
    if tag == "IsNotEqualTo":
        return got != wanted
    raise NotImplementedError(tag)


class _Handler(BaseHTTPRequestHandler):
    ews: EwsServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            user, _, password = base64.b64decode(value).decode().partition(":")
            return self.ews.users.get(user) == password
        if scheme.lower() == "bearer":
            return value in self.ews.tokens
        return False

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not self._authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="ews"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            status, response, after = self.ews.handle(body, self.headers.get("X-AnchorMailbox", ""))
        except Exception:
            # A bug in this server: say so loudly rather than hang the client.
            traceback.print_exc()
            status, response, after = 501, traceback.format_exc().encode(), None
        if after is not None:
            # The server did the work; the client never hears about it.
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.send_response(status)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(response)))
        self.end_headers()
        self.wfile.write(response)
